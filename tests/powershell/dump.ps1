# A script as a PowerShell user writes one: run a dump with --json, parse the one JSON object
# (stderr merged in, which stays quiet with --json), branch on the exit code.
param([string]$Minidumper, [string]$TargetPid, [string]$Output)

$answer = & $Minidumper -p $TargetPid -o $Output --type Full --json 2>&1
$code = $LASTEXITCODE
$result = $answer | ConvertFrom-Json

if ($code -eq 0) {
    "DUMPED path=$($result.path) runtime=$($result.runtime_version) threads=$($result.threads)"
} elseif ($code -eq 3) {
    "NOT FOUND pid=$($result.pid) error=$($result.error)"
} elseif ($code -eq 6) {
    "OUTPUT PROBLEM path=$($result.path) error=$($result.error)"
} else {
    "FAILED code=$code error=$($result.error)"
}
exit $code

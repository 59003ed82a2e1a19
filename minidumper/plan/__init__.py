"""The plan: the one place that decides what each mode puts in the dump."""

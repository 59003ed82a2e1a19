// A bench target: an idle ASP.NET Core app (Kestrel on a loopback port, a few endpoints, served a
// few requests to warm up) with the clock-stamping thread that measures its own pauses.
using System.Net.Http;
using BenchTargets;

ClockStamper.ExitWithParent();
var builder = WebApplication.CreateBuilder(new WebApplicationOptions { Args = args });
builder.Logging.ClearProviders();
builder.WebHost.UseUrls("http://127.0.0.1:0");
var app = builder.Build();
var orders = Enumerable.Range(0, 5000).Select(i => new { Id = i, Name = $"order-{i}", Total = i * 1.5m }).ToList();
app.MapGet("/", () => "hello");
app.MapGet("/orders/{id:int}", (int id) => id >= 0 && id < orders.Count ? Results.Ok(orders[id]) : Results.NotFound());
app.MapGet("/orders", () => orders.Take(100));
await app.StartAsync();

string address = app.Urls.First();
using (var client = new HttpClient())
{
    for (int i = 0; i < 50; i++)
    {
        await client.GetStringAsync($"{address}/");
        await client.GetStringAsync($"{address}/orders/{i}");
        await client.GetStringAsync($"{address}/orders");
    }
}
GC.Collect();
GC.WaitForPendingFinalizers();
GC.Collect();

var stamper = new ClockStamper(1.0);
stamper.Start();
Console.Out.WriteLine($"READY {Environment.ProcessId}");
Console.Out.Flush();
await Task.Run(stamper.Serve);
await app.StopAsync();

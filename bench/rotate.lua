-- wrk script: each request carries the next of the prepared browsers' cookies (one line each,
-- from the file in $COOKIES), like many browsers hitting the server; the summary is one JSON line.
local cookies = {}
local path = os.getenv("BENCH_PATH") or "/"
for line in io.lines(os.getenv("COOKIES")) do
  cookies[#cookies + 1] = line
end
local next_index = 0

request = function()
  next_index = next_index % #cookies + 1
  return wrk.format("GET", path, { ["Cookie"] = cookies[next_index] })
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end

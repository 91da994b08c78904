-- wrk script: POST the JSON bodies of a file (one per line), cycled in order on every thread, and print
-- one machine-readable line from done():
--   WRK_RESULT {"requests":..,"duration_us":..,"p50_us":..,"p99_us":..,"req_s":..,"errors":{..}}
-- usage: wrk -t1 -c32 -d8s --timeout 30s -s loadtests/wrk_post.lua http://127.0.0.1:P/v1/generate -- BODIES
-- (requests are built once in init(); response() stays nil so wrk does not parse bodies)

local requests, n, i = {}, 0, 0

function init(args)
   local path = args[1] or error("wrk_post.lua: pass the bodies file after --")
   for line in io.lines(path) do
      if #line > 0 then
         n = n + 1
         requests[n] = wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, line)
      end
   end
   if n == 0 then error("wrk_post.lua: no bodies in " .. path) end
end

function request()
   i = i % n + 1
   return requests[i]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"req_s":%.3f,'
         .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.bytes, summary.requests / (summary.duration / 1e6),
      latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0), latency.mean, latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end

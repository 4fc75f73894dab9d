-- wrk script: GET /related/n<id>?k=K over the load test's N notes (ids n0 .. n<N-1>).
--   DIST=uniform  every note equally likely (the cold case: the answer cache rarely helps)
--   DIST=zipf     a feed's skew: the note of popularity rank r is asked with probability
--                 proportional to 1 / r^ZIPF_S; ranks are a fixed shuffle of the ids
-- Environment: N (100000), K (20), DIST (uniform), ZIPF_S (1.0), SEED (42).
-- At the end it prints one line, `RESULT requests=... rps=... p50_ms=... p99_ms=...`, which
-- scripts/loadtest.sh reads.
local n = tonumber(os.getenv("N") or "100000")
local k = os.getenv("K") or "20"
local dist = os.getenv("DIST") or "uniform"
local s = tonumber(os.getenv("ZIPF_S") or "1.0")
local seed = tonumber(os.getenv("SEED") or "42")

local cdf, rank_to_id
if dist == "zipf" then
  cdf = {}
  local total = 0
  for r = 1, n do
    total = total + r ^ (-s)
    cdf[r] = total
  end
  for r = 1, n do cdf[r] = cdf[r] / total end
  -- Popular notes spread over the id space (Fisher-Yates with a fixed seed: the same in every
  -- thread and every run).
  rank_to_id = {}
  for i = 1, n do rank_to_id[i] = i - 1 end
  math.randomseed(7)
  for i = n, 2, -1 do
    local j = math.random(1, i)
    rank_to_id[i], rank_to_id[j] = rank_to_id[j], rank_to_id[i]
  end
elseif dist ~= "uniform" then
  error("DIST must be uniform or zipf, got " .. dist)
end

-- Each wrk thread draws its own sequence.
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(seed + (tid or 0))
end

local function zipf_id()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return rank_to_id[lo]
end

function request()
  local id
  if cdf then id = zipf_id() else id = math.random(0, n - 1) end
  return wrk.format("GET", "/related/n" .. id .. "?k=" .. k)
end

function done(summary, latency, requests)
  local e = summary.errors
  local ms = function(p) return latency:percentile(p) / 1000 end
  io.write(string.format(
    "RESULT requests=%d rps=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f non2xx=%d socket_errors=%d\n",
    summary.requests, summary.requests / (summary.duration / 1e6), ms(50), ms(90), ms(99), latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end

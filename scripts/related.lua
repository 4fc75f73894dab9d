-- wrk script: GET /related/n<random>?k=20 over the load test's N notes.
math.randomseed(42)
local n = tonumber(os.getenv("N") or "100000")
request = function()
  return wrk.format("GET", "/related/n" .. math.random(0, n - 1) .. "?k=20")
end

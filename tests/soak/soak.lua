-- task soak: one wrk script mixing the bench's workloads by weight (tests/soak/run.py runs it once per minute).
--
-- Environment: BENCH_DATA, BENCH_LUA_DIR (the shared harness's data file and lua/, whose common.lua gives
-- load_rows and urlencode), SOAK_ADMIN_TOKEN (a superuser's bearer token: writes are purged with P6).
--
-- run.py starts wrk with as many threads as connections: each thread has one connection, so request() and
-- response() alternate and `last` is the kind of the request a response answers. That is what lets every kind
-- have its own expected status, and lets the writes delete the posts they created.
dofile((os.getenv("BENCH_LUA_DIR") or "lua") .. "/common.lua")

-- Share of the requests per kind. Reads dominate. Logins are few, each is an Argon2 hash (~20 ms of CPU), and well
-- under 1 %: near 1 % the p99 would jump between the logins' latency and the reads' with the logins' random share.
-- `write` creates a post of the thread's writer, updates it, and hard-deletes it again (P6), so the table stays
-- the size the seeding left it (a thread keeps at most MAX_OWN posts; after each run, run.py purges what is left).
local WEIGHTS = {
  { "user", 20 },   -- W2: GET /user/{username}
  { "users", 8 },   -- W1: GET /users?page=N
  { "me", 15 },     -- W7: GET /user/me/ with a bearer token
  { "post", 25 },   -- W3: GET /{username}/post/{id}, cached
  { "posts", 15 },  -- W4: GET /{username}/posts, cached
  { "write", 16 },  -- create / update / delete, see write_request
  { "login", 0.5 }, -- W5: POST /login with the right password
}
local EXPECT = { user = 200, users = 200, me = 200, post = 200, posts = 200, create = 201, update = 200,
                 delete = 200, login = 200 }
local MAX_OWN = 2
local FORM = { ["Content-Type"] = "application/x-www-form-urlencoded" }

local threads = {}
local pools = {}
local total_weight = 0
for _, kw in ipairs(WEIGHTS) do total_weight = total_weight + kw[2] end

local readers = load_rows("user")
local writers = load_rows("writer")
pools.user, pools.users, pools.me, pools.post, pools.posts, pools.login = {}, {}, {}, {}, {}, {}
for _, u in ipairs(readers) do
  table.insert(pools.user, wrk.format("GET", API .. "/user/" .. u.username))
  table.insert(pools.me, wrk.format("GET", API .. "/user/me/", { ["Authorization"] = "Bearer " .. u.token }))
  table.insert(pools.posts, wrk.format("GET", API .. "/" .. u.username .. "/posts?page=1&items_per_page=10"))
  local body = "username=" .. urlencode(u.username) .. "&password=" .. urlencode(u.password)
  table.insert(pools.login, wrk.format("POST", API .. "/login", FORM, body))
  for _, id in ipairs(u.post_ids) do
    table.insert(pools.post, wrk.format("GET", API .. "/" .. u.username .. "/post/" .. id))
  end
end
for page = 1, 10 do
  table.insert(pools.users, wrk.format("GET", API .. "/users?page=" .. page .. "&items_per_page=10"))
end

function setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  local tid = wrk.thread:get("tid") or 0
  math.randomseed(os.time() * 1000 + tid * 7919)
  writer = writers[(tid % #writers) + 1]
  own = {}         -- ids of posts this thread created and has not deleted yet
  last = nil       -- kind of the request in flight
  counts = {}      -- kind -> responses
  bad = {}         -- "kind:status" -> responses with another status than EXPECT[kind]
  unexpected, status_5xx = 0, 0
end

local function pick(pool)
  return pool[math.random(#pool)]
end

local function write_request()
  local auth = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. writer.token }
  local base = API .. "/" .. writer.username
  if #own >= MAX_OWN then
    local id = table.remove(own, 1)  -- gone from `own` once sent: a lost response never deletes twice
    local admin = { ["Authorization"] = "Bearer " .. (os.getenv("SOAK_ADMIN_TOKEN") or "") }
    return "delete", wrk.format("DELETE", base .. "/db_post/" .. id, admin)
  end
  if #own > 0 and math.random() < 0.5 then
    local body = '{"text":"Updated by the soak at ' .. os.time() .. '."}'
    return "update", wrk.format("PATCH", base .. "/post/" .. own[#own], auth, body)
  end
  return "create", wrk.format("POST", base .. "/post", auth, '{"title":"soak write","text":"Written by task soak."}')
end

function request()
  local roll = math.random() * total_weight
  local kind = WEIGHTS[#WEIGHTS][1]
  for _, kw in ipairs(WEIGHTS) do
    roll = roll - kw[2]
    if roll < 0 then kind = kw[1] break end
  end
  local req
  if kind == "write" then
    kind, req = write_request()
  else
    req = pick(pools[kind])
  end
  last = kind
  return req
end

function response(status, headers, body)
  local kind = last or "none"
  counts[kind] = (counts[kind] or 0) + 1
  if status >= 500 then status_5xx = status_5xx + 1 end
  if status ~= EXPECT[kind] then
    unexpected = unexpected + 1
    local key = kind .. ":" .. status
    bad[key] = (bad[key] or 0) + 1
  elseif kind == "create" then
    local id = body and body:match('"id":%s*(%d+)')
    if id then table.insert(own, id) end
  end
end

local function joined(map)
  local keys = {}
  for key in pairs(map) do keys[#keys + 1] = key end
  table.sort(keys)
  local parts = {}
  for _, key in ipairs(keys) do parts[#parts + 1] = key .. ":" .. map[key] end
  return #parts > 0 and table.concat(parts, ",") or "-"
end

function done(summary, latency, requests)
  local all_counts, all_bad, unexp, fives = {}, {}, 0, 0
  for _, t in ipairs(threads) do
    for key, n in pairs(t:get("counts") or {}) do all_counts[key] = (all_counts[key] or 0) + n end
    for key, n in pairs(t:get("bad") or {}) do all_bad[key] = (all_bad[key] or 0) + n end
    unexp = unexp + (t:get("unexpected") or 0)
    fives = fives + (t:get("status_5xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d rps=%.1f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f socket_errors=%d timeouts=%d unexpected=%d " ..
    "status_5xx=%d kinds=%s bad=%s\n",
    summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e.connect + e.read + e.write + e.timeout, e.timeout,
    unexp, fives, joined(all_counts), joined(all_bad)))
end

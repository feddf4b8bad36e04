-- wrk script of bench/run_load.py --wrk: POSTs job_match runs and writes the run id of every
-- 202 to $RUN_IDS_DIR/ids-<thread>.txt, anything else to errors-<thread>.txt. Each thread stops
-- after $MAX_RUNS_PER_THREAD accepted runs (0: no limit).
wrk.method = "POST"
wrk.body = os.getenv("RUN_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("RUN_TOKEN")

local next_thread = 0
function setup(thread)
  thread:set("thread_no", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  local dir = os.getenv("RUN_IDS_DIR")
  ids = io.open(dir .. "/ids-" .. thread_no .. ".txt", "w")
  ids:setvbuf("line")
  errors = io.open(dir .. "/errors-" .. thread_no .. ".txt", "w")
  errors:setvbuf("line")
  limit = tonumber(os.getenv("MAX_RUNS_PER_THREAD") or "0")
  accepted = 0
end

function response(status, headers, body)
  if status == 202 then
    ids:write(body:match('"run_id"%s*:%s*"([^"]+)"'), "\n")
    accepted = accepted + 1
    if limit > 0 and accepted >= limit then
      wrk.thread:stop()
    end
  else
    errors:write(status, " ", body:sub(1, 200):gsub("\n", " "), "\n")
  end
end

-- Included (--#include attempt_log) by the scripts that end an attempt or a job.

-- Add `line` (JSON, '' for none) to the record's `attempt_log`: one line per ended attempt, for its provenance.
local function append_attempt(record, line)
  if line == '' then return end
  local log = redis.call('HGET', record, 'attempt_log')
  redis.call('HSET', record, 'attempt_log', log and (log .. '\n' .. line) or line)
end

-- Queue the webhook event of a job that ended as `event` at `at` (ms) for the delivery process, when the job's
-- `webhook` (its JSON, false for none) asks for that event.
local function webhook_event(webhook, events_key, kid, event, at)
  if not webhook then return end
  for _, wanted in ipairs(cjson.decode(webhook)['events'] or {}) do
    if wanted == event then
      redis.call('XADD', events_key, '*', 'k', kid, 'e', event, 't', at)
      return
    end
  end
end

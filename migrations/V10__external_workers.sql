-- Run your own code (issue #18): external workers and the shell tool.

-- A task whose pipeline is exactly one `external` step is run by a program outside Orrery that claims its work
-- over POST /jobs/claim. Its queue is derived from the payload by PostgreSQL itself, so no writer can let the
-- two disagree.
ALTER TABLE task ADD COLUMN external_queue text GENERATED ALWAYS AS (
    CASE WHEN jsonb_typeof(payload -> 'pipeline') = 'array'
              AND jsonb_array_length(payload -> 'pipeline') = 1
              AND payload #>> '{pipeline,0,uses}' = 'external'
         THEN payload #>> '{pipeline,0,with,queue}'
    END) STORED;

-- Copied from the task by whoever inserts the row (API, scheduler) and re-stamped with the other claim settings
-- when the task is edited. NULL = the built-in worker runs it.
ALTER TABLE due_work ADD COLUMN external_queue text
    CHECK (external_queue IS NULL OR length(external_queue) BETWEEN 1 AND 100);
-- When the current lease of an external job began: the started_at of the task_run its completion records. The
-- built-in worker keeps that instant in memory and never writes it (claims stay HOT updates of unindexed
-- columns either way).
ALTER TABLE due_work ADD COLUMN leased_at timestamptz;

-- The built-in worker's claim index now excludes external work. Same columns and order as before, so the
-- claim's plan is unchanged; external rows simply are not in it.
DROP INDEX due_work_claim;
CREATE INDEX due_work_claim ON due_work (priority, ready_at, id) WHERE state = 'pending' AND external_queue IS NULL;
-- The external claim: rows of the named queues, in claim order within each queue.
CREATE INDEX due_work_external_claim ON due_work (external_queue, priority, ready_at, id)
    WHERE state = 'pending' AND external_queue IS NOT NULL;

-- A new scope for the tokens of external workers.
ALTER TABLE agent DROP CONSTRAINT agent_scopes_check;
ALTER TABLE agent ADD CONSTRAINT agent_scopes_check
    CHECK (scopes <@ ARRAY['admin', 'tasks:read', 'tasks:write', 'runs:read', 'events:publish', 'jobs:work']::text[]);

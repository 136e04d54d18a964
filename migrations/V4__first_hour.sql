-- The first hour of a new user (issue #17).

-- A run triggered by an event records which event: its id, and the event as the run saw it
-- ({id, topic, payload, published_at}), copied from due_work when the attempt is recorded.
ALTER TABLE task_run ADD COLUMN event_id text, ADD COLUMN event jsonb;

-- Backfill: every nominal fire materialized by POST /tasks/{id}/backfill, once per (task, fire) for the task's
-- lifetime, so that a window backfilled twice (or overlapping windows) runs each fire exactly once even after
-- the first backfill's runs finished and their due_work rows are gone.
CREATE TABLE backfill_fire (
    task_id    uuid NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    run_at     timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, run_at)
);

-- GET /audit filters by actor and by action, newest first, keyset-paginated on id.
CREATE INDEX audit_log_actor ON audit_log (actor, id DESC);
CREATE INDEX audit_log_action ON audit_log (action, id DESC);

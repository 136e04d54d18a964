-- Orrery schema. Table and column names are part of the operator's psql workflow: keep them stable.
-- No CHECK constraint may call now(): checks must stay immutable so that dumps restore and rows never
-- become invalid with the passage of time.

CREATE TABLE agent (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    scopes      text[] NOT NULL DEFAULT '{}'
                CHECK (scopes <@ ARRAY['admin', 'tasks:read', 'tasks:write', 'runs:read', 'events:publish']::text[]),
    webhook_url text CHECK (webhook_url IS NULL OR length(webhook_url) <= 2000),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO agent (id, name, scopes)
VALUES ('00000000-0000-0000-0000-000000000001', 'system', ARRAY['admin']);

-- Bearer tokens, stored only as SHA-256 digests of the secret.
CREATE TABLE agent_token (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id     uuid NOT NULL REFERENCES agent (id) ON DELETE CASCADE,
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX agent_token_agent ON agent_token (agent_id);

CREATE TABLE task (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title                 text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    description           text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    created_by            uuid NOT NULL REFERENCES agent (id),
    schedule_kind         text NOT NULL CHECK (schedule_kind IN ('cron', 'rrule', 'once', 'event')),
    schedule_expr         text NOT NULL CHECK (length(btrim(schedule_expr)) BETWEEN 1 AND 4000),
    timezone              text NOT NULL DEFAULT 'UTC' CHECK (length(timezone) BETWEEN 1 AND 64),
    -- Anchor of a bare RRULE (no DTSTART): local midnight of this instant's day in `timezone`.
    schedule_anchor       timestamptz NOT NULL DEFAULT now(),
    payload               jsonb NOT NULL DEFAULT '{"params": {}, "pipeline": []}'
                          CHECK (jsonb_typeof(payload) = 'object'),
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'paused', 'canceled', 'completed')),
    priority              smallint NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 9),
    dedupe_key            text CHECK (dedupe_key IS NULL OR length(dedupe_key) BETWEEN 1 AND 100),
    dedupe_window_seconds integer NOT NULL DEFAULT 0 CHECK (dedupe_window_seconds >= 0),
    max_retries           smallint NOT NULL DEFAULT 3 CHECK (max_retries BETWEEN 0 AND 10),
    backoff_strategy      text NOT NULL DEFAULT 'exponential_jitter'
                          CHECK (backoff_strategy IN ('exponential_jitter', 'linear', 'fixed')),
    concurrency_key       text CHECK (concurrency_key IS NULL OR length(concurrency_key) BETWEEN 1 AND 100),
    timeout_seconds       integer NOT NULL DEFAULT 300 CHECK (timeout_seconds BETWEEN 1 AND 86400),
    misfire_grace_seconds integer NOT NULL DEFAULT 30 CHECK (misfire_grace_seconds >= 0),
    catchup               text NOT NULL DEFAULT 'skip' CHECK (catchup IN ('skip', 'latest', 'all')),
    overlap               text NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip', 'queue')),
    -- Scheduler cursor: every fire at or before this instant has been materialized (or skipped).
    materialized_until    timestamptz,
    -- Scheduler cursor: the first fire after materialized_until; NULL = to be computed, 'infinity' = exhausted.
    next_fire_at          timestamptz,
    -- User-facing: the earliest pending fire, or the next computed one.
    next_run_at           timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_list ON task (created_at DESC, id DESC);
CREATE INDEX task_owner_list ON task (created_by, created_at DESC, id DESC);
CREATE INDEX task_dedupe ON task (created_by, dedupe_key) WHERE dedupe_key IS NOT NULL;
-- The scheduler's scan: active time-based tasks ordered by how far they are materialized.
CREATE INDEX task_materialize ON task (next_fire_at NULLS FIRST)
    WHERE status = 'active' AND schedule_kind <> 'event';

-- Whoever moves the cursor or changes the schedule (the API on create, edit, resume, snooze) without setting
-- next_fire_at itself makes the scheduler recompute it: the scheduler alone owns next_fire_at.
CREATE FUNCTION task_reset_fire_cursor() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.next_fire_at IS NOT DISTINCT FROM OLD.next_fire_at
       AND (NEW.materialized_until IS DISTINCT FROM OLD.materialized_until
            OR NEW.schedule_kind <> OLD.schedule_kind
            OR NEW.schedule_expr <> OLD.schedule_expr
            OR NEW.timezone <> OLD.timezone
            OR NEW.schedule_anchor <> OLD.schedule_anchor
            OR (NEW.status = 'active' AND OLD.status <> 'active')) THEN
        NEW.next_fire_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER task_reset_fire_cursor BEFORE UPDATE ON task
    FOR EACH ROW EXECUTE FUNCTION task_reset_fire_cursor();
-- Exhausted schedules waiting for their last run before they become completed.
CREATE INDEX task_exhausted ON task (id) WHERE status = 'active' AND next_fire_at = 'infinity';
CREATE INDEX task_event ON task (schedule_expr) WHERE status = 'active' AND schedule_kind = 'event';

-- One row per fire to execute. run_at is the nominal fire instant and never changes; ready_at is what the
-- claim compares with now (retries, snooze and overlap queuing move ready_at only).
CREATE TABLE due_work (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id               uuid NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    run_at                timestamptz NOT NULL,
    ready_at              timestamptz NOT NULL,
    priority              smallint NOT NULL CHECK (priority BETWEEN 1 AND 9),
    concurrency_key       text,
    overlap               text NOT NULL DEFAULT 'allow' CHECK (overlap IN ('allow', 'skip', 'queue')),
    catchup               text NOT NULL DEFAULT 'skip' CHECK (catchup IN ('skip', 'latest', 'all')),
    misfire_grace_seconds integer NOT NULL DEFAULT 30 CHECK (misfire_grace_seconds >= 0),
    trigger               text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'event', 'retry')),
    state                 text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    locked_by             text,
    locked_until          timestamptz,
    fencing_token         bigint NOT NULL DEFAULT 0,
    attempt               integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    event_id              text,
    event                 jsonb,
    params                jsonb,
    last_error            text,
    last_error_kind       text,
    dead_at               timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    CHECK ((trigger = 'event') = (event_id IS NOT NULL))
);
-- Exactly-once guard for materialized fires and event deliveries.
CREATE UNIQUE INDEX due_work_schedule_once ON due_work (task_id, run_at) WHERE trigger = 'schedule';
CREATE UNIQUE INDEX due_work_event_once ON due_work (task_id, event_id) WHERE trigger = 'event';
-- Matches the claim query exactly: literal state, ordered as the claim orders.
CREATE INDEX due_work_claim ON due_work (priority, ready_at, id) WHERE state = 'pending';
CREATE INDEX due_work_task ON due_work (task_id, run_at);
CREATE INDEX due_work_dead ON due_work (dead_at DESC, id DESC) WHERE state = 'dead';
CREATE INDEX due_work_leased ON due_work (locked_until) WHERE locked_until IS NOT NULL;

-- A concurrency key (or a task's overlap guard) held by a live lease. The primary key makes the claim atomic:
-- two claimers cannot both take the same key, whatever their snapshots.
CREATE TABLE concurrency_slot (
    key          text PRIMARY KEY,
    due_work_id  bigint NOT NULL,
    locked_until timestamptz NOT NULL
);

-- One row per execution attempt (and per fire skipped as a misfire or overlap, with attempt 0).
CREATE TABLE task_run (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id       uuid NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    due_work_id   bigint,
    attempt       integer NOT NULL CHECK (attempt >= 0),
    worker_id     text,
    trigger       text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'event', 'retry')),
    scheduled_for timestamptz NOT NULL,
    started_at    timestamptz,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    success       boolean NOT NULL,
    error         text,
    error_kind    text,
    output        jsonb
);
CREATE INDEX task_run_task ON task_run (task_id, id DESC);
CREATE INDEX task_run_finished ON task_run (finished_at);

-- At most one due_work row per (task, event), even after the run completed and its row is gone.
CREATE TABLE event_delivery (
    task_id    uuid NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    event_id   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, event_id)
);
CREATE INDEX event_delivery_created ON event_delivery (created_at);

CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor        uuid,
    action       text NOT NULL,
    subject_type text NOT NULL,
    subject_id   text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_subject ON audit_log (subject_type, subject_id, id DESC);
CREATE INDEX audit_log_created ON audit_log (created_at);

CREATE TABLE worker_heartbeat (
    worker_id  text PRIMARY KEY,
    hostname   text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    processed  bigint NOT NULL DEFAULT 0,
    failed     bigint NOT NULL DEFAULT 0,
    in_flight  integer NOT NULL DEFAULT 0,
    state      text NOT NULL DEFAULT 'starting' CHECK (state IN ('starting', 'running', 'draining', 'stopped'))
);

CREATE TABLE scheduler_heartbeat (
    instance_id text PRIMARY KEY,
    hostname    text NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);

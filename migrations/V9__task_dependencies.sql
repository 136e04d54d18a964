-- Task dependencies (issue #13, part 3): a task runs `after` other tasks. docs/flow-control.md#dependencies is the
-- contract; this is how it is kept.
--
-- Vocabulary: the *dependent* (child) is `task_id` in every table below, the *parent* is `parent_task_id`. A *trace*
-- is one fire of a root (a scheduled, manual, event or backfilled due_work row gets a fresh trace_id) and every run it
-- causes through dependencies: a dependent's due_work row inherits the trace_id of the parents that released it.

-- The task's declaration as written and as the API returns it:
-- [{"task": "<name or id as written>", "task_id": "<uuid>", "condition": "success|failure|any", "params": {...}}].
-- task_dependency below is derived from it by a trigger, in the same statement.
ALTER TABLE task ADD COLUMN after jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(after) = 'array');

-- The edges, one per (dependent, parent): what a parent's settlement joins to find its dependents.
CREATE TABLE task_dependency (
    task_id        uuid NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    parent_task_id uuid NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    position       integer NOT NULL CHECK (position >= 0),
    condition      text NOT NULL CHECK (condition IN ('success', 'failure', 'any')),
    -- Templates rendered against the parent's run into the dependent's params (NULL: none).
    params         jsonb CHECK (params IS NULL OR jsonb_typeof(params) = 'object'),
    PRIMARY KEY (task_id, parent_task_id),
    CHECK (task_id <> parent_task_id)
);
CREATE INDEX task_dependency_parent ON task_dependency (parent_task_id);

CREATE FUNCTION task_sync_dependencies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_dependency WHERE task_id = NEW.id;
    INSERT INTO task_dependency (task_id, parent_task_id, position, condition, params)
    SELECT NEW.id, (e.value->>'task_id')::uuid, (e.ordinality - 1)::integer, e.value->>'condition',
           nullif(e.value->'params', 'null'::jsonb)
      FROM jsonb_array_elements(NEW.after) WITH ORDINALITY AS e;
    RETURN NULL;
END;
$$;
CREATE TRIGGER task_sync_dependencies_insert AFTER INSERT ON task
    FOR EACH ROW WHEN (NEW.after <> '[]'::jsonb) EXECUTE FUNCTION task_sync_dependencies();
CREATE TRIGGER task_sync_dependencies_update AFTER UPDATE OF after ON task
    FOR EACH ROW WHEN (OLD.after IS DISTINCT FROM NEW.after) EXECUTE FUNCTION task_sync_dependencies();

-- Every run belongs to a trace. A new root row gets a fresh one; a dependent's row is inserted with its parents'.
ALTER TABLE due_work ADD COLUMN trace_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE task_run ADD COLUMN trace_id uuid;
ALTER TABLE due_work DROP CONSTRAINT due_work_trigger_check,
    ADD CONSTRAINT due_work_trigger_check
        CHECK (trigger IN ('schedule', 'manual', 'event', 'retry', 'dependency'));
ALTER TABLE task_run DROP CONSTRAINT task_run_trigger_check,
    ADD CONSTRAINT task_run_trigger_check
        CHECK (trigger IN ('schedule', 'manual', 'event', 'retry', 'dependency'));

-- One row per (dependent, trace): the exactly-once record of a fan-in. The settling parents' statements count their
-- arrivals here with INSERT ... ON CONFLICT DO UPDATE, which serializes them on this row whatever their snapshots,
-- so exactly one of them sees the last arrival and inserts the dependent's due_work row.
--   waiting: fewer than `expected` parents have settled in this trace;
--   unmet:   all settled, but some outcome does not meet its edge's condition (a replayed parent can still turn it);
--   held:    all settled and met while the dependent is paused (resume releases it);
--   fired:   the dependent's due_work row was inserted (terminal: at most once per trace);
--   dropped: it would have fired but the dependent is canceled (or deleted) (terminal).
CREATE TABLE dependency_gate (
    task_id    uuid NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    trace_id   uuid NOT NULL,
    -- The dependent's number of parents when the trace's first parent settled.
    expected   integer NOT NULL CHECK (expected >= 0),
    -- (No CHECK >= 0 on the counters: an upsert's proposed row carries deltas, which a replay makes negative.)
    arrived    integer NOT NULL,
    unmet      integer NOT NULL,
    state      text NOT NULL CHECK (state IN ('waiting', 'unmet', 'held', 'fired', 'dropped')),
    -- Set by the statement that moved the gate to `fired` (read from its RETURNING), false otherwise.
    just_fired boolean NOT NULL DEFAULT false,
    -- The dependent's status when the last arrival was counted (locked FOR SHARE by that statement).
    dependent_status text,
    created_at timestamptz NOT NULL DEFAULT now(),
    decided_at timestamptz,
    PRIMARY KEY (task_id, trace_id)
);
CREATE INDEX dependency_gate_created ON dependency_gate (created_at);
CREATE INDEX dependency_gate_held ON dependency_gate (task_id) WHERE state = 'held';

-- Each parent's final outcome in a trace, as its dependent sees it (and what the edge's params render from).
CREATE TABLE dependency_arrival (
    task_id            uuid NOT NULL REFERENCES task (id) ON DELETE CASCADE,
    trace_id           uuid NOT NULL,
    parent_task_id     uuid NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('succeeded', 'dead')),
    met                boolean NOT NULL,
    parent_due_work_id bigint NOT NULL,
    parent_run_id      bigint,
    -- How often this parent settled finally in this trace (more than once only through replays of dead work).
    settlements        integer NOT NULL DEFAULT 1,
    params_template    jsonb,
    parent_params      jsonb,
    parent_output      jsonb,
    arrived_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, trace_id, parent_task_id)
);
CREATE INDEX dependency_arrival_parent_run ON dependency_arrival (parent_run_id);
CREATE INDEX dependency_arrival_created ON dependency_arrival (arrived_at);

-- The state a gate reaches with these counts (one definition for the worker's settlement and the API).
CREATE FUNCTION dependency_gate_state(arrived integer, expected integer, unmet integer, child_status text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
             WHEN arrived < expected THEN 'waiting'
             WHEN unmet > 0 THEN 'unmet'
             WHEN child_status IN ('active', 'completed') THEN 'fired'
             WHEN child_status = 'paused' THEN 'held'
             ELSE 'dropped'
           END
$$;

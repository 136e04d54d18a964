-- Named queues with flow control (issue #13): pause, max_concurrency across all workers, and rate limits of at
-- most N starts in any window of a period (a sliding-window log, exact), per queue and per rate key.
-- docs/flow-control.md has the semantics.
--
-- The claim's fast path must stay what it was: rows carry their queue and rate key (written by the INSERT
-- statements that create them, no trigger), and the claim skips only queues listed as constrained in the tiny
-- `queue` table; when none is, it claims exactly as before.

CREATE TABLE queue (
    name                    text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    max_concurrency         integer CHECK (max_concurrency IS NULL OR max_concurrency BETWEEN 1 AND 100000),
    paused                  boolean NOT NULL DEFAULT false,
    -- Whole queue: at most rate_limit starts in any window of rate_period_seconds.
    rate_limit              integer CHECK (rate_limit IS NULL OR rate_limit BETWEEN 1 AND 1000000),
    rate_period_seconds     double precision
                            CHECK (rate_period_seconds IS NULL OR rate_period_seconds BETWEEN 0.001 AND 86400),
    -- Each rate key of the queue (due_work.rate_key, rendered from task.rate_key): at most key_rate_limit
    -- starts in any window of key_rate_period_seconds. Rows without a key are not limited by it.
    key_rate_limit          integer CHECK (key_rate_limit IS NULL OR key_rate_limit BETWEEN 1 AND 1000000),
    key_rate_period_seconds double precision
                            CHECK (key_rate_period_seconds IS NULL OR key_rate_period_seconds BETWEEN 0.001 AND 86400),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CHECK ((rate_limit IS NULL) = (rate_period_seconds IS NULL)),
    CHECK ((key_rate_limit IS NULL) = (key_rate_period_seconds IS NULL))
);
INSERT INTO queue (name) VALUES ('default');

-- A task's queue, and its rate key template (`${params.customer_id}`; API decision 4's syntax, params and event
-- only). A queue without a row has no limits and is not paused (the API creates the row).
ALTER TABLE task ADD COLUMN queue text NOT NULL DEFAULT 'default' CHECK (queue ~ '^[A-Za-z0-9._-]{1,64}$');
ALTER TABLE task ADD COLUMN rate_key text CHECK (rate_key IS NULL OR length(rate_key) BETWEEN 1 AND 200);

-- Written by every INSERT of due_work from the task (like priority), so the claim never joins task to filter.
-- A constant default: no table rewrite, and writers that do not know queues (tests, benches) get `default`.
ALTER TABLE due_work ADD COLUMN queue text NOT NULL DEFAULT 'default';
ALTER TABLE due_work ADD COLUMN rate_key text;
UPDATE due_work d SET queue = t.queue FROM task t WHERE t.id = d.task_id AND t.queue <> 'default';

-- WORKER_QUEUES and the flow-controlled claim find a queue's ready rows without scanning the others'.
CREATE INDEX due_work_queue_claim ON due_work (queue, priority, ready_at, id) WHERE state = 'pending';

-- A rate key from its template: `${params.a.b}` and `${event.payload.x}` replaced by the value at that path
-- (text as is, other JSON as JSON text, missing = empty), at most 200 characters. `params` are the run's
-- (task params overridden by the row's, as the worker's template context), `event` the triggering event.
CREATE FUNCTION orrery_rate_key(template text, params jsonb, event jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    m   text[];
    out text := template;
    val text;
BEGIN
    IF template IS NULL THEN
        RETURN NULL;
    END IF;
    FOR m IN SELECT regexp_matches(template, '(\$\{\s*(params|event)((\.[A-Za-z0-9_-]+)*)\s*\})', 'g') LOOP
        val := CASE m[2]
                 WHEN 'params' THEN params #>> string_to_array(substr(m[3], 2), '.')
                 ELSE event #>> string_to_array(substr(m[3], 2), '.')
               END;
        out := replace(out, m[1], coalesce(val, ''));
    END LOOP;
    RETURN left(out, 200);
END;
$$;

-- The flow state of a limited queue (rate_key = '') and of each rate key of a queue with a per-key limit,
-- written only inside the claim statement with INSERT ... ON CONFLICT DO UPDATE (which always works on the
-- latest version of the row, under its lock), so claimers serialize per limited queue or key and can never
-- both take the last unit of capacity.
--   running / running_until: the rows holding one of max_concurrency's places and their lease expiry (an entry
--     past its expiry no longer counts: a worker killed mid-run gives its places back when its lease ends);
--   start_at / start_n: the sliding-window log, one entry per claim that started rows in the last period;
--   asked / granted: what the last claim asked for (candidate ids in claim order) and how many it got;
--   wait_until: when a full window has room again (the claim skips a key whose window is full);
--   next_room: when the oldest entry of the log leaves the window, i.e. when room next grows (idle workers
--     wake at it; set whenever the log is not empty, not only when the window is full, because a claim's view
--     of the room at its start can be a few milliseconds older than the grant's).
CREATE TABLE queue_flow (
    queue         text NOT NULL,
    rate_key      text NOT NULL DEFAULT '',
    running       bigint[] NOT NULL DEFAULT '{}',
    running_until timestamptz[] NOT NULL DEFAULT '{}',
    start_at      timestamptz[] NOT NULL DEFAULT '{}',
    start_n       integer[] NOT NULL DEFAULT '{}',
    asked         bigint[] NOT NULL DEFAULT '{}',
    granted       integer NOT NULL DEFAULT 0,
    wait_until    timestamptz,
    next_room     timestamptz,
    PRIMARY KEY (queue, rate_key)
);

-- Queue-level rows (max_concurrency places, given back and renewed by id) and pending wake-ups, without scanning
-- one row per rate key.
CREATE INDEX queue_flow_places ON queue_flow (queue) WHERE rate_key = '';
CREATE INDEX queue_flow_wait ON queue_flow (next_room) WHERE next_room IS NOT NULL;

-- The grant: given a flow state, the ids asking to start (in claim order), the limits, the lease length and the
-- clock, returns the new state. Instants in the log never go backwards (a claimer whose transaction began
-- earlier records the latest instant), so pruning the log can never drop an entry a later decision still needs.
CREATE FUNCTION queue_flow_grant(
    p_running bigint[], p_running_until timestamptz[], p_start_at timestamptz[], p_start_n integer[],
    p_asked bigint[], p_max_concurrency integer, p_rate_limit integer, p_rate_period double precision,
    p_lease double precision, p_now timestamptz,
    OUT running bigint[], OUT running_until timestamptz[], OUT start_at timestamptz[], OUT start_n integer[],
    OUT asked bigint[], OUT granted integer, OUT wait_until timestamptz, OUT next_room timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    t    timestamptz := greatest(p_now, p_start_at[cardinality(p_start_at)]);
    used bigint;
    g    integer := cardinality(p_asked);
BEGIN
    IF p_max_concurrency IS NOT NULL THEN
        SELECT coalesce(array_agg(x.i ORDER BY x.o), '{}'), coalesce(array_agg(x.u ORDER BY x.o), '{}')
          INTO running, running_until
          FROM unnest(p_running, p_running_until) WITH ORDINALITY AS x(i, u, o)
         WHERE x.u >= p_now;
    ELSE
        running := '{}';
        running_until := '{}';
    END IF;
    IF p_rate_limit IS NOT NULL THEN
        SELECT coalesce(array_agg(x.s ORDER BY x.o), '{}'), coalesce(array_agg(x.n ORDER BY x.o), '{}')
          INTO start_at, start_n
          FROM unnest(p_start_at, p_start_n) WITH ORDINALITY AS x(s, n, o)
         WHERE x.s > t - make_interval(secs => p_rate_period);
    ELSE
        start_at := '{}';
        start_n := '{}';
    END IF;
    used := coalesce((SELECT sum(n) FROM unnest(start_n) AS n), 0);
    IF p_max_concurrency IS NOT NULL THEN
        g := least(g, greatest(p_max_concurrency - cardinality(running), 0));
    END IF;
    IF p_rate_limit IS NOT NULL THEN
        g := least(g, greatest(p_rate_limit - used, 0)::integer);
    END IF;
    IF g > 0 THEN
        IF p_max_concurrency IS NOT NULL THEN
            running := running || p_asked[1:g];
            running_until := running_until || array_fill(p_now + make_interval(secs => p_lease), ARRAY[g]);
        END IF;
        IF p_rate_limit IS NOT NULL THEN
            start_at := start_at || t;
            start_n := start_n || g;
            used := used + g;
        END IF;
    END IF;
    asked := p_asked;
    granted := g;
    wait_until := CASE WHEN p_rate_limit IS NOT NULL AND used >= p_rate_limit
                       THEN start_at[1] + make_interval(secs => p_rate_period) END;
    next_room := CASE WHEN p_rate_limit IS NOT NULL AND cardinality(start_at) > 0
                      THEN start_at[1] + make_interval(secs => p_rate_period) END;
END;
$$;

-- Gives back the places of rows that finished or were released.
CREATE FUNCTION queue_flow_drop(p_running bigint[], p_running_until timestamptz[], p_ids bigint[],
    OUT running bigint[], OUT running_until timestamptz[])
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(x.i ORDER BY x.o), '{}'), coalesce(array_agg(x.u ORDER BY x.o), '{}')
      FROM unnest(p_running, p_running_until) WITH ORDINALITY AS x(i, u, o)
     WHERE x.i <> ALL (p_ids)
$$;

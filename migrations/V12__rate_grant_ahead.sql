-- Rate limits granted ahead (issue #13: 1,000 starts/s held within 1 %).
--
-- A sliding window frees room only as its oldest entry leaves it, and a claimer that waits for that instant
-- reaches the log some milliseconds later (wake-up, planning, execution): every slot then recurs every period
-- plus that delay, and the queue runs below its limit. With `p_ahead` > 0 a grant that finds the window full,
-- but whose oldest entry leaves it within `p_ahead` seconds, is recorded at that future instant instead: the
-- worker claims the rows a little early and holds them until the instant (the claim answers it as the row's
-- `not_before`). Every grant is still recorded at the instant its rows may start, and instants never go
-- backwards, so no window of grants ever holds more than the limit. The claim passes 0 for queues with a
-- per-key limit (their key grants are made at the claim's own instant).
DROP FUNCTION queue_flow_grant(bigint[], timestamptz[], timestamptz[], integer[], bigint[], integer, integer,
                               double precision, double precision, timestamptz);

CREATE FUNCTION queue_flow_grant(
    p_running bigint[], p_running_until timestamptz[], p_start_at timestamptz[], p_start_n integer[],
    p_asked bigint[], p_max_concurrency integer, p_rate_limit integer, p_rate_period double precision,
    p_lease double precision, p_now timestamptz, p_ahead double precision,
    OUT running bigint[], OUT running_until timestamptz[], OUT start_at timestamptz[], OUT start_n integer[],
    OUT asked bigint[], OUT granted integer, OUT wait_until timestamptz, OUT next_room timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    t    timestamptz := greatest(p_now, p_start_at[cardinality(p_start_at)]);
    used bigint;
    cap  integer := cardinality(p_asked);
    g    integer;
BEGIN
    IF p_max_concurrency IS NOT NULL THEN
        SELECT coalesce(array_agg(x.i ORDER BY x.o), '{}'), coalesce(array_agg(x.u ORDER BY x.o), '{}')
          INTO running, running_until
          FROM unnest(p_running, p_running_until) WITH ORDINALITY AS x(i, u, o)
         WHERE x.u >= p_now;
        cap := least(cap, greatest(p_max_concurrency - cardinality(running), 0));
    ELSE
        running := '{}';
        running_until := '{}';
    END IF;
    g := cap;
    IF p_rate_limit IS NOT NULL THEN
        SELECT coalesce(array_agg(x.s ORDER BY x.o), '{}'), coalesce(array_agg(x.n ORDER BY x.o), '{}')
          INTO start_at, start_n
          FROM unnest(p_start_at, p_start_n) WITH ORDINALITY AS x(s, n, o)
         WHERE x.s > t - make_interval(secs => p_rate_period);
        used := coalesce((SELECT sum(n) FROM unnest(start_n) AS n), 0);
        g := least(cap, greatest(p_rate_limit - used, 0)::integer);
        IF g = 0 AND cap > 0 AND coalesce(p_ahead, 0) > 0 AND cardinality(start_at) > 0
           AND start_at[1] + make_interval(secs => p_rate_period) <= p_now + make_interval(secs => p_ahead) THEN
            -- Full now, room within the horizon: decide at the instant the oldest entry leaves the window.
            t := start_at[1] + make_interval(secs => p_rate_period);
            SELECT coalesce(array_agg(x.s ORDER BY x.o), '{}'), coalesce(array_agg(x.n ORDER BY x.o), '{}')
              INTO start_at, start_n
              FROM unnest(start_at, start_n) WITH ORDINALITY AS x(s, n, o)
             WHERE x.s > t - make_interval(secs => p_rate_period);
            used := coalesce((SELECT sum(n) FROM unnest(start_n) AS n), 0);
            g := least(cap, greatest(p_rate_limit - used, 0)::integer);
        END IF;
    ELSE
        start_at := '{}';
        start_n := '{}';
        used := 0;
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

-- Nothing lost, nobody let in (issue #14).

-- Durable events: POST /events writes the event here in the transaction of its audit record, then tries to put it
-- on the `events` stream at once. A relay in every scheduler publishes what is not on the stream yet (the API
-- could not reach Redis, or crashed in between), and publishes again what was relayed but never delivered (Redis
-- lost it), so an accepted event reaches its tasks whatever fails. The scheduler marks `delivered_at` in the
-- transaction that creates the event's due_work; event_delivery keeps that to once per (task, event).
CREATE TABLE event_outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      text NOT NULL UNIQUE,
    topic         text NOT NULL CHECK (length(topic) BETWEEN 1 AND 200),
    payload       jsonb NOT NULL DEFAULT '{}',
    published_by  uuid,
    published_at  timestamptz NOT NULL DEFAULT now(),
    -- Whoever relays it (the API right after commit, or a relay) holds it until then.
    claimed_until timestamptz,
    relayed_at    timestamptz,
    relay_count   integer NOT NULL DEFAULT 0,
    stream_id     text,
    delivered_at  timestamptz
);
CREATE INDEX event_outbox_undelivered ON event_outbox (id) WHERE delivered_at IS NULL;
CREATE INDEX event_outbox_delivered ON event_outbox (delivered_at) WHERE delivered_at IS NOT NULL;

-- Secrets: values encrypted with ORRERY_SECRETS_KEY (AES-256-GCM, the owner and name as associated data), never
-- returned. A task's pipeline reads its owner's secrets as ${secrets.NAME}.
CREATE TABLE secret (
    owner      uuid NOT NULL REFERENCES agent (id) ON DELETE CASCADE,
    name       text NOT NULL CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,63}$'),
    ciphertext bytea NOT NULL,
    nonce      bytea NOT NULL CHECK (length(nonce) = 12),
    key_id     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);

-- Tokens may expire.
ALTER TABLE agent_token ADD COLUMN expires_at timestamptz;

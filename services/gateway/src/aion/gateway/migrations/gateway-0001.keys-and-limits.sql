-- API keys (hashed) and the rate limits every gateway replica shares.
-- depends:
CREATE TABLE gateway_api_keys (
    id           text PRIMARY KEY,
    tenant       text NOT NULL,
    name         text NOT NULL DEFAULT '',
    roles        text[] NOT NULL,
    hash         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX gateway_api_keys_tenant ON gateway_api_keys (tenant, created_at);

-- Token buckets: calls per key and per tenant, tokens per minute per tenant.
CREATE TABLE gateway_rate_buckets (
    key        text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Open streams; a row lives until its stream ends, or its deadline if its replica died.
CREATE TABLE gateway_open_streams (
    id         uuid NOT NULL,
    scope      text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (id, scope)
);
CREATE INDEX gateway_open_streams_scope ON gateway_open_streams (scope, expires_at);

-- Take costs[i] from bucket keys[i] (refilled at rates[i]/s up to bursts[i]) for every i,
-- or from none: returns 0 when taken, else the seconds until it could be. A cost of 0
-- only asks that the bucket is not in debt (tokens per minute are charged afterwards).
CREATE FUNCTION gateway_take(keys text[], rates float8[], bursts float8[], costs float8[])
RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
    i int;
    order_ int[];
    have float8[] := '{}';
    now_ts timestamptz;
    wait float8 := 0;
    row_ gateway_rate_buckets%ROWTYPE;
BEGIN
    FOR i IN 1 .. array_length(keys, 1) LOOP
        INSERT INTO gateway_rate_buckets (key, tokens, updated_at)
        VALUES (keys[i], bursts[i], clock_timestamp()) ON CONFLICT (key) DO NOTHING;
    END LOOP;
    -- Lock in key order so concurrent calls over the same buckets cannot deadlock.
    PERFORM 1 FROM gateway_rate_buckets WHERE key = ANY(keys) ORDER BY key FOR UPDATE;
    now_ts := clock_timestamp();
    FOR i IN 1 .. array_length(keys, 1) LOOP
        SELECT * INTO row_ FROM gateway_rate_buckets WHERE key = keys[i];
        have[i] := LEAST(bursts[i], row_.tokens
                         + GREATEST(0, EXTRACT(EPOCH FROM now_ts - row_.updated_at)) * rates[i]);
        IF NOT ((costs[i] > 0 AND have[i] >= costs[i]) OR (costs[i] = 0 AND have[i] > 0)) THEN
            wait := GREATEST(wait, (GREATEST(costs[i], 1e-3) - have[i]) / rates[i]);
        END IF;
    END LOOP;
    FOR i IN 1 .. array_length(keys, 1) LOOP
        UPDATE gateway_rate_buckets
        SET tokens = have[i] - CASE WHEN wait = 0 THEN costs[i] ELSE 0 END, updated_at = now_ts
        WHERE key = keys[i];
    END LOOP;
    RETURN wait;
END $$;

-- Charge cost to a bucket after the fact (tokens generated), down to -burst at most.
CREATE FUNCTION gateway_spend(key_ text, rate float8, burst float8, cost float8)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    now_ts timestamptz;
    row_ gateway_rate_buckets%ROWTYPE;
BEGIN
    INSERT INTO gateway_rate_buckets (key, tokens, updated_at)
    VALUES (key_, burst, clock_timestamp()) ON CONFLICT (key) DO NOTHING;
    SELECT * INTO row_ FROM gateway_rate_buckets WHERE key = key_ FOR UPDATE;
    now_ts := clock_timestamp();
    UPDATE gateway_rate_buckets
    SET tokens = GREATEST(-burst, LEAST(burst, row_.tokens + GREATEST(0,
                     EXTRACT(EPOCH FROM now_ts - row_.updated_at)) * rate) - cost),
        updated_at = now_ts
    WHERE key = key_;
END $$;

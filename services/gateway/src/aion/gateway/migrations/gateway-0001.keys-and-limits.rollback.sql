DROP FUNCTION IF EXISTS gateway_spend(text, float8, float8, float8);
DROP FUNCTION IF EXISTS gateway_take(text[], float8[], float8[], float8[]);
DROP TABLE IF EXISTS gateway_open_streams;
DROP TABLE IF EXISTS gateway_rate_buckets;
DROP TABLE IF EXISTS gateway_api_keys;

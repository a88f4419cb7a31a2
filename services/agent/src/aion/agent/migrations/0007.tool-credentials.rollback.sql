ALTER TABLE agents DROP COLUMN tool_credentials;

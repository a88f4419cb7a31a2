-- Every change of a registered agent NOTIFYs aion_agents with its [tenant, name]
-- (a JSON array), delivered when the transaction commits: each agent service replica
-- keeps the agents its tasks look up in memory and drops one when it hears of its change
-- (registry.CachedRegistry). An upsert that changes nothing but updated_at (the
-- operator registering an unchanged Agent again) says nothing.
-- depends: 0008.task-trace

CREATE FUNCTION aion_agent_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE'
     AND to_jsonb(OLD) - 'updated_at' = to_jsonb(NEW) - 'updated_at' THEN
    RETURN NULL;
  END IF;
  IF TG_OP <> 'INSERT' THEN
    PERFORM pg_notify('aion_agents', json_build_array(OLD.tenant, OLD.name)::text);
  END IF;
  IF TG_OP <> 'DELETE' THEN
    PERFORM pg_notify('aion_agents', json_build_array(NEW.tenant, NEW.name)::text);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER agents_changed AFTER INSERT OR UPDATE OR DELETE ON agents
  FOR EACH ROW EXECUTE FUNCTION aion_agent_changed();

DROP TRIGGER agents_changed ON agents;
DROP FUNCTION aion_agent_changed();

"""Start-up I/O that comes before serving: the schema and the Kafka topics."""

from __future__ import annotations

from aion.agent import db, events, kafka
from aion.agent import settings as agent_settings


async def prepare(cfg: agent_settings.AgentSettings) -> events.Topics:
    """Migrate the database and create the topics this service writes and reads; returns
    the topics."""
    await db.migrate(cfg.postgres_dsn.get_secret_value())
    topics = events.Topics(cfg.topic_prefix)
    await kafka.ensure_topics(
        cfg.kafka_bootstrap,
        {topics.task_events: 8, topics.work: 8, topics.dead_letter(topics.work): 1},
        cfg,
    )
    return topics

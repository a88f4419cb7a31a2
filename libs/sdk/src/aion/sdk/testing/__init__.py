"""Run aion on one machine: the five services as local processes (``make dev``, tests)."""

from aion.sdk.testing.suite import LocalSuite, ServiceProcess, SuiteError

__all__ = ["LocalSuite", "ServiceProcess", "SuiteError"]

"""BullMQ queues, workers, schedules and the JobRun ledger."""

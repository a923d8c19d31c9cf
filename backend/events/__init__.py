"""Live run events: `GET /runs/{id}/events` streams a run's status, progress and metrics as
server-sent events, relayed from the broker's pub/sub (see `core.events`)."""

"""`python -m webhooks`: the delivery process of webhooks (Standard Webhooks), from the events stream that the job
and batch scripts write (`keys.webhook_events`) to the clients' receivers, retried with backoff, at least once."""

"""The notifications service: durable e-mail and webhook delivery, and platform-event webhooks."""

"""Delivery of mail the gateway writes itself: SMTP transport and the outbox of retries."""

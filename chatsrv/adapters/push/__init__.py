"""Offline push: Web Push (RFC 8291 encryption, RFC 8292 VAPID) and the webhook, over HTTP."""

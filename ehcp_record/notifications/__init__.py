"""Subscriptions (rest-hook) decided by the subscriber's consent."""

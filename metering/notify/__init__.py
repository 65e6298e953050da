"""What a customer is told: low-balance alerts, account events, emails and
signed outbound webhooks (`python -m metering notifier`)."""

"""What the API and the workers share: settings, key schema, job models, store and stream protocol."""

"""kubetune studio: human feedback on model outputs, stored in PostgreSQL, feeding training.

Labelers compare two responses to a prompt (A / B / tie / both bad); the studio checks their
agreement, reports human win rates against a baseline with intervals, and turns accepted
preferences into versioned DPO snapshots. It never imports torch and talks to models only
through OpenAI-compatible endpoints.
"""

"""The task model: HyenaDNA per read set -> pooled vector -> aggregation -> head; frozen vectors; the LM head."""

"""Data: sources (hub, local, FASTA, demo) -> schema checks -> split -> read sets -> token arrays and their caches."""

"""The pretraining data pipeline: sources, filters, dedup, PII, decontamination, repository packing, FIM, shards.

Stages run in this order (see docs/data.md):

    sources -> metadata -> filters -> PII redaction -> decontamination -> exact + near dedup
            -> multi-file packing order -> FIM per file -> mixture -> tokenize -> best-fit shards
"""

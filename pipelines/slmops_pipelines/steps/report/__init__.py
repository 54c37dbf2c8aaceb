"""The reports a job leaves: ``report.html`` (one self-contained page) and the summary rows.

:mod:`.html` builds the pages' parts (style, charts, tables, the job header) with nothing but
the standard library; :mod:`.finetune` and :mod:`.optimize` lay out each kind's report over it.
"""

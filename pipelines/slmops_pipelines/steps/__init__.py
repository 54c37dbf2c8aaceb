"""The steps of a job, as plain Python functions with typed configs.

Each step reads its inputs from local folders (or an artifact store), writes its outputs to a
local folder, and returns a small typed result.  The local engine, the KFP components and the
tests all call these same functions.
"""

"""The stages of each job, shared by every engine.

A stage is a plain function over folders and JSON-able values: the local engine calls the
stages of a job in one process, each KFP component calls one of them in its own pod.  That
is how the two engines produce the same artifacts without forking the logic.
"""

"""The operator's kopf handlers.

* :mod:`.jobs` -- reconciliation of FineTuneJob and OptimizeJob (timer, finalizer, indexes);
* :mod:`.validation` -- the validating admission webhook;
* :mod:`.conditions` -- phases and conditions as pure functions;
* :mod:`.kube` -- the few API calls the operator makes itself.

Handlers are registered on a registry built by :func:`slmops_operator.runtime.build_operator`,
never on kopf's global one, so that tests run operators side by side.
"""

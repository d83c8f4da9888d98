"""The optional admin HTTP listener (``--admin ENDPOINT``): ``/metrics``,
``/health`` and a status page. See :mod:`eventbus.admin.service`."""

from eventbus.admin.service import AdminService, Sampler, admin_endpoint

__all__ = ["AdminService", "Sampler", "admin_endpoint"]

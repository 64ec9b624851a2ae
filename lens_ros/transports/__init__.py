"""Adapters that connect ``lens_ros.core.service.LensService`` to a middleware."""

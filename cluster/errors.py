"""The one error of the cluster package a caller catches."""


class ClusterSpecError(ValueError):
    """The cluster spec names nothing we can connect to, or its workers cannot do the work."""

"""SSH adapters: the service's own connections into guests, and the gateway users SSH through."""

from devbox_service.ssh.gateway import GatewayAuthority, GatewayError, LoginThrottle, SSHGateway

__all__ = ["GatewayAuthority", "GatewayError", "LoginThrottle", "SSHGateway"]

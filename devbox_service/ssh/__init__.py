"""SSH adapters: the service's own connections into guests, and the gateway users SSH through."""

from devbox_service.ssh.gateway import GatewayAuthority, GatewayError, SSHGateway
from devbox_service.ssh.login import LoginThrottle

__all__ = ["GatewayAuthority", "GatewayError", "LoginThrottle", "SSHGateway"]

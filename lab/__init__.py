"""The lab fleet: network namespaces with real sshd, dockerd and a registry (tests, demos)."""

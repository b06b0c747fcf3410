"""Moving a plan to another local authority (reg 15), within and between deployments."""

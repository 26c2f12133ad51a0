"""The Regatta operator: ApiService resources reconciled into workloads (kopf)."""

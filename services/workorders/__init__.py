"""Work orders for field crews: REST API, inspections opened by meter alarms, customers enriched over SOAP.

Nothing here fails because the customers service is slow or down: orders are created with the customer pending
and filled in later. See README.md.
"""

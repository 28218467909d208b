"""customers: the grid operator's customers and who is at which meterpoint when, over SOAP 1.1."""

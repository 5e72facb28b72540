"""The operator side of the grid contract: signing commands, the operator's MQTT client, the live
site view; the site controller and the demand-response bridge belong here too. The device
packages never import it."""

"""The API layer: what each model takes and gives, in plain Python (no torch, no grpc).

One module per model declares its request fields once (bounds, defaults, the checks that
name a bad field: `mic2e_services.schema`) and its plain query and result types. The
model package (torch), its servicer (grpc) and the orchestrator all import it from here,
so the model packages never import each other and the orchestrator imports no model
package. `messages` turns the options messages the orchestrator forwards into these
types' terms (it imports the protos; model code never imports it).
"""

"""The built-in reactor's sensors, as the simulator publishes them and the default configuration
serves them: names (units in comments), the key quality variable, the period."""

PERIOD = 10.0  # seconds of process time between two frames
KEY = "product_conc"
AUXILIARIES = (
    "feed_flow",  # m3/h
    "feed_temp",  # degC
    "feed_conc",  # kmol/m3 of A
    "coolant_flow",  # m3/h
    "coolant_in_temp",  # degC
    "coolant_out_temp",  # degC
    "reactor_temp",  # degC
    "reactor_pressure",  # bar
    "level",  # m
    "outlet_flow",  # m3/h
    "conc_a",  # kmol/m3, online analyser
    "agitator_power",  # kW, rises with viscosity, i.e. with product
    "offgas_flow",  # Nm3/h, the side reaction's gas
)
FEATURES = (*AUXILIARIES, KEY)

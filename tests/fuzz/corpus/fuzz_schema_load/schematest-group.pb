
ˆ
schematest/v1/group.protoschematest.v1"\
	MitGruppe7
gruppe (
2.schematest.v1.MitGruppe.GruppeRgruppe
Gruppe
x (Rx
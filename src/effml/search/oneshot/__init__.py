"""Weight sharing: one supernet whose slices are the children (BigNAS's sandwich rule, coarse-to-fine
child selection and export) and AutoHAS's joint architecture and hyper-parameter search. The
training steps plug into the ordinary Trainer; children are ordinary specs with ordinary weights."""
